import { randomUUID } from 'node:crypto';
import { OpenAPIHono } from '@hono/zod-openapi';
import type { Context } from 'hono';
import { OPERATION_CANCELED, OPERATION_ID_PATTERN, canceledError, describeCreateBodyProblem, type Operation, type OperationRef } from '../shared/operation.js';
import { annotateActiveOperation } from '../shared/tracing.js';
import type { AppDeps, AppEnv } from './env.js';
import { GraphError, notFound, unlessRedisFails } from './errors.js';
import { encodeSkipToken, nextLink } from './list-query.js';
import {
  cancelOperationRoute,
  createOperationRefRoute,
  createOperationRoute,
  getOperationRoute,
  listOperationsRoute,
  onlyRefSegment,
} from './operation-routes.js';
import { readCreateRequest } from './create-request.js';
import { writeBodyGuards } from './route-parts.js';
import { operationStream } from './operation-stream.js';
import { holdUntilEnded } from './operation-watch.js';
import { preferredWaitSeconds } from './prefer.js';
import { answer, jsonResponse } from './respond.js';
import type { OperationResource } from './schemas.js';
import { publicBaseUrl } from './urls.js';
import { answerValidationFailure } from './validation.js';

/** Polling hint on an inprogress operation, in seconds (a Retry-After value). */
const INPROGRESS_RETRY_AFTER = '1';

/** The connectionOperation handlers, for one path family (operation-routes.ts describes them). */
export function operationRoutes({ store, creates, watch, config, log, metrics }: AppDeps): OpenAPIHono<AppEnv> {
  const routes = new OpenAPIHono<AppEnv>({ defaultHook: answerValidationFailure(describeCreateBodyProblem) });
  const series = metrics?.apiSeries();

  /** Answers with the operation; with `Prefer: wait=N` on an inprogress one, first holds the
   *  request until it ends or N seconds pass (operation-watch.ts). */
  const answerOperation = async (c: Context<AppEnv>, ref: OperationRef, operation: Operation, status: 200 | 201, headers: Record<string, string> = {}) => {
    const seconds = operation.status === 'inprogress' ? preferredWaitSeconds(c.req.header('prefer')) : undefined;
    let latest = operation;
    if (seconds !== undefined) {
      const held = await holdUntilEnded(watch, operation, ref, seconds, c.req.raw.signal, store, series);
      // The client went away while held: nobody reads this (recorded as 499, like app.onError's).
      if (!held) return new Response(null, { status: 499 }) as ReturnType<typeof jsonResponse>;
      latest = held.operation;
      if (held.held) headers['Preference-Applied'] = `wait=${seconds}`;
    }
    if (latest.status === 'inprogress') headers['Retry-After'] = INPROGRESS_RETRY_AFTER;
    return jsonResponse(c, present(latest), status, headers);
  };

  const create = async (c: Context<AppEnv>, connectionId: string, id: string | undefined) => {
    const ref = { tenantId: c.get('principal').tenantId, connectionId, operationId: id ?? randomUUID() };
    annotateActiveOperation(ref);
    const { result, operation } = await unlessRedisFails(() => creates.create(ref));
    if (result === 'exists') {
      throw new GraphError(409, 'conflict', `An operation with id '${ref.operationId}' already exists in connection '${connectionId}'.`);
    }
    metrics?.operationsCreated.inc();
    const location = `${publicBaseUrl(c, config)}${c.req.path.replace(/\/(\$|%24)ref$/, '')}/${ref.operationId}`;
    return answerOperation(c, ref, operation, 201, { Location: location });
  };
  const createHandler = async (c: Context<AppEnv>) => {
    const { connectionId, id } = await readCreateRequest(c);
    return create(c, connectionId, id);
  };
  routes.post(createOperationRoute.getRoutingPath(), writeBodyGuards, createHandler);
  routes.post(createOperationRefRoute.getRoutingPath(), onlyRefSegment, writeBodyGuards, createHandler);

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
    if (page.next) body['@odata.nextLink'] = nextLink(c, config, encodeSkipToken(page.next));
    body.value = page.operations.map(present);
    return jsonResponse(c, body, 200);
  });

  routes.openapi(getOperationRoute, async (c) => {
    const ref = operationRefOf(c, c.req.valid('param'));
    const operation = await unlessRedisFails(() => store.get(ref));
    if (!operation) throw missingOperation(ref);
    if (c.req.header('accept')?.includes('text/event-stream')) {
      const stream = operationStream({ watch, operation, ref, present, keepAliveMs: config.STREAM_KEEP_ALIVE_MS, log, metrics: series });
      // no-transform and X-Accel-Buffering: proxies (nginx) pass each event on at once.
      return answer(c, stream, 200, 'text/event-stream', { 'Cache-Control': 'no-cache, no-transform', 'X-Accel-Buffering': 'no' });
    }
    return answerOperation(c, ref, operation, 200);
  });

  routes.openapi(cancelOperationRoute, async (c) => {
    const ref = operationRefOf(c, c.req.valid('param'));
    const canceled = await unlessRedisFails(() => store.cancel(ref, canceledError));
    if (canceled.result === 'missing') throw missingOperation(ref);
    const { operation } = canceled;
    if (canceled.result === 'canceled') series?.operationsCanceled.inc();
    // Cancelling again answers the same; an operation that ended otherwise keeps its outcome.
    else if (operation.error?.errorCode !== OPERATION_CANCELED) {
      throw new GraphError(409, 'conflict', `Operation '${ref.operationId}' has already ${operation.status}; only an inprogress operation can be canceled.`);
    }
    return jsonResponse(c, present(operation), 200);
  });

  return routes;
}

/** An operation's ref from the path. An id that does not match the rule cannot exist: 404, as
 *  for any unknown id (a 400 would tell a caller more than "not here"). */
function operationRefOf(c: Context<AppEnv>, { connectionId, operationId }: { connectionId: string; operationId: string }): OperationRef {
  const ref = { tenantId: c.get('principal').tenantId, connectionId, operationId };
  if (!OPERATION_ID_PATTERN.test(operationId)) throw missingOperation(ref);
  return ref;
}

function missingOperation({ connectionId, operationId }: OperationRef): GraphError {
  return notFound(`Operation '${operationId}' was not found in connection '${connectionId}'.`);
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
