import { OpenAPIHono } from '@hono/zod-openapi';
import type { Context } from 'hono';
import { describeConnectionBodyProblem, type ExternalConnection } from '../shared/connection.js';
import { validateSchema, type SchemaViolation } from '../shared/connection-schema.js';
import type { SubmitResult } from '../shared/connection-store.js';
import type { ConnectionRef } from '../shared/keys.js';
import { OPERATION_CANCELED, type ErrorDetail, type OperationRef } from '../shared/operation.js';
import { annotateActiveOperation } from '../shared/tracing.js';
import {
  createConnectionRoute,
  deleteConnectionRoute,
  getConnectionRoute,
  getSchemaRoute,
  listConnectionsRoute,
  updateSchemaRoute,
} from './connection-routes.js';
import type { AppDeps, AppEnv } from './env.js';
import { GraphError, notFound, unlessRedisFails } from './errors.js';
import { encodeConnectionSkipToken, nextLink } from './list-query.js';
import { emptyAnswer, jsonResponse } from './respond.js';
import type { ConnectionResource } from './schemas.js';
import { publicBaseUrl } from './urls.js';
import { answerValidationFailure } from './validation.js';

/** Polling hint for a schema or delete operation, in seconds: they take longer than most. */
const PROVISIONING_RETRY_AFTER = '2';

/** What a schema operation records when a delete of its connection overtook it. */
const deletedWhileProvisioning: ErrorDetail = {
  errorCode: OPERATION_CANCELED,
  message: 'The connection was deleted while this schema was provisioning.',
  details: [],
};

/** The externalConnection handlers, for one path family (connection-routes.ts describes them). */
export function connectionRoutes({ connections, queue, config, log }: AppDeps): OpenAPIHono<AppEnv> {
  const routes = new OpenAPIHono<AppEnv>({ defaultHook: answerValidationFailure(describeConnectionBodyProblem) });

  /** The job that carries a schema or delete operation. If it cannot be added, the operation
   *  is stored and inprogress all the same: the reconciler enqueues it, so the 202 holds. */
  const enqueue = async (ref: OperationRef) => {
    annotateActiveOperation(ref);
    try {
      await queue.enqueue(ref);
    } catch (error) {
      log.warn({ err: error, operationId: ref.operationId, connectionId: ref.connectionId }, 'enqueue failed; the reconciler will enqueue this operation');
    }
  };

  /** 202, no body, the operation's Location and a polling hint. */
  const acceptedOperation = (c: Context<AppEnv>, connectionPath: string, operationId: string) =>
    emptyAnswer(c, 202, {
      Location: `${publicBaseUrl(c, config)}${connectionPath}/operations/${operationId}`,
      'Retry-After': PROVISIONING_RETRY_AFTER,
    });

  routes.openapi(createConnectionRoute, async (c) => {
    const body = c.req.valid('json');
    const { tenantId } = c.get('principal');
    const created = await unlessRedisFails(() => connections.create(tenantId, body));
    if (created === 'exists') throw new GraphError(409, 'conflict', `A connection with id '${body.id}' already exists in this tenant.`);
    const connection: ExternalConnection = { id: body.id, name: body.name, description: body.description ?? '', state: 'draft' };
    return jsonResponse(c, present(connection), 201, { Location: `${publicBaseUrl(c, config)}${c.req.path}/${body.id}` });
  });

  routes.openapi(listConnectionsRoute, async (c) => {
    const { tenantId } = c.get('principal');
    const { top, after, count } = c.req.valid('query');
    const [page, total] = await unlessRedisFails(() =>
      Promise.all([connections.list(tenantId, { top, ...(after ? { after } : {}) }), count ? connections.count(tenantId) : undefined]),
    );
    const body: Record<string, unknown> = {};
    if (total !== undefined) body['@odata.count'] = total;
    if (page.next) body['@odata.nextLink'] = nextLink(c, config, encodeConnectionSkipToken(page.next));
    body.value = page.connections.map(present);
    return jsonResponse(c, body, 200);
  });

  routes.openapi(getConnectionRoute, async (c) => {
    const ref = connectionRefOf(c, c.req.valid('param'));
    const connection = await unlessRedisFails(() => connections.get(ref));
    if (!connection) throw missingConnection(ref);
    return jsonResponse(c, present(connection), 200);
  });

  routes.openapi(deleteConnectionRoute, async (c) => {
    const ref = connectionRefOf(c, c.req.valid('param'));
    const deleted = await unlessRedisFails(() => connections.delete(ref, deletedWhileProvisioning));
    if (deleted.result === 'missing') throw missingConnection(ref);
    // A delete already inprogress: the same answer, naming its operation (a client that lost
    // the first answer finds it again).
    if (deleted.result === 'deleting') return acceptedOperation(c, c.req.path, deleted.operationId);
    if (deleted.canceledSchemaOperationId) {
      log.info({ connectionId: ref.connectionId, operationId: deleted.canceledSchemaOperationId }, 'schema operation canceled: its connection is being deleted');
    }
    await enqueue({ ...ref, operationId: deleted.operation.id });
    return acceptedOperation(c, c.req.path, deleted.operation.id);
  });

  /** Checks the schema against the rules, an update also against the provisioned schema, and
   *  submits it. If another schema was submitted between that read and this submission, it is
   *  checked again against the new one. */
  const submitSchema = async (ref: ConnectionRef, body: unknown): Promise<Exclude<SubmitResult, { result: 'changed' }>> => {
    const current = await unlessRedisFails(() => connections.provisioned(ref));
    if (!current) throw missingConnection(ref);
    const validation = validateSchema(body, current.schema);
    if (!validation.valid) throw schemaRefused(validation.violations);
    const submitted = await unlessRedisFails(() => connections.submitSchema(ref, validation.schema, current.latestOperationId));
    return submitted.result === 'changed' ? submitSchema(ref, body) : submitted;
  };

  routes.openapi(updateSchemaRoute, async (c) => {
    const ref = connectionRefOf(c, c.req.valid('param'));
    const submitted = await submitSchema(ref, c.req.valid('json'));
    if (submitted.result === 'missing') throw missingConnection(ref);
    if (submitted.result !== 'accepted') {
      const doing = submitted.result === 'deleting' ? 'being deleted' : 'provisioning a schema';
      throw new GraphError(
        409,
        'conflict',
        `Connection '${ref.connectionId}' is ${doing} (operation '${submitted.operationId}'); submit the schema again once that operation has ended.`,
      );
    }
    await enqueue({ ...ref, operationId: submitted.operation.id });
    return acceptedOperation(c, c.req.path.replace(/\/schema$/, ''), submitted.operation.id);
  });

  routes.openapi(getSchemaRoute, async (c) => {
    const ref = connectionRefOf(c, c.req.valid('param'));
    const [connection, schema] = await unlessRedisFails(() => Promise.all([connections.get(ref), connections.schema(ref)]));
    if (!connection) throw missingConnection(ref);
    if (!schema) throw notFound(`Connection '${ref.connectionId}' has no schema yet; PATCH one to its /schema.`);
    return jsonResponse(c, { '@odata.type': '#microsoft.graph.externalConnectors.schema', ...schema }, 200);
  });

  return routes;
}

function connectionRefOf(c: Context<AppEnv>, { connectionId }: { connectionId: string }): ConnectionRef {
  return { tenantId: c.get('principal').tenantId, connectionId };
}

function missingConnection({ connectionId }: ConnectionRef): GraphError {
  return notFound(`Connection '${connectionId}' was not found.`);
}

/** Graph's answer to a schema that breaks its rules: InvalidRequest, the first problem in the
 *  message and its rule in innerError.code, every problem in details. */
function schemaRefused(violations: SchemaViolation[]): GraphError {
  const [first] = violations;
  return new GraphError(400, 'InvalidRequest', first!.message, {}, {
    code: first!.code,
    details: violations.map(({ code, message, target }) => ({ code, message, target })),
  });
}

function present(connection: ExternalConnection): ConnectionResource {
  return { '@odata.type': '#microsoft.graph.externalConnectors.externalConnection', ...connection };
}
