import { randomUUID } from 'node:crypto';
import type { ConnectionState, CreateConnectionBody, ExternalConnection } from './connection.js';
import type { ConnectionSchema } from './connection-schema.js';
import type { ConnectionRef } from './keys.js';
import type { ErrorDetail, Operation } from './operation.js';
import type { RedisClient } from './redis.js';
import { scripts } from './scripts.js';
import { errorJson, inprogressOperation, type OperationStore } from './store.js';
import { activeTraceparent } from './tracing.js';

/**
 * The connection store: the only module that reads or writes externalConnection records, and
 * the one that creates the operations of their schemas and deletes (the operation store does
 * everything else to those operations, as to any other). A record lives in its connection's
 * slot, beside its operations, so that the scripts ending a schema or delete operation update it
 * in the same step (scripts.ts); a tenant's list of connection ids lives in the tenant's slot.
 */

export type SubmitResult =
  | { result: 'accepted'; operation: Operation }
  | { result: 'missing' }
  /** Another schema was submitted since the provisioned one was read. */
  | { result: 'changed' }
  /** A schema or delete operation of the connection is inprogress: its id. */
  | { result: 'provisioning' | 'deleting'; operationId: string };

export type DeleteResult =
  | { result: 'accepted'; operation: Operation; canceledSchemaOperationId?: string }
  | { result: 'missing' }
  | { result: 'deleting'; operationId: string };

export interface ConnectionPage {
  connections: ExternalConnection[];
  /** The id the next page starts after; absent on the last page. */
  next?: string;
}

export class ConnectionStore {
  constructor(
    private readonly redis: RedisClient,
    private readonly operations: OperationStore,
    private readonly now: () => number = Date.now,
  ) {}

  private get keys() {
    return this.operations.keys;
  }

  /**
   * Creates a tenant's connection in state draft, unless its id is taken in the tenant.
   *
   * The list entry (another slot) is added before the record and again after it: before, so
   * that a create that fails half way leaves an id without a record (a listing skips and removes
   * it), never a record no listing shows; after, so that a removal racing this create (`unlist`
   * of the same id deleted a moment ago) cannot leave the new record unlisted.
   */
  async create(tenantId: string, { id, name, description = '' }: CreateConnectionBody): Promise<'created' | 'exists'> {
    const listKey = this.keys.tenantConnections(tenantId);
    await this.redis.zadd(listKey, 'NX', 0, id);
    const created = await scripts.createConnection.run(this.redis, [this.keys.connection({ tenantId, connectionId: id })], [name, description, this.now()]);
    await this.redis.zadd(listKey, 'NX', 0, id);
    return created === 1 ? 'created' : 'exists';
  }

  async get(ref: ConnectionRef): Promise<ExternalConnection | undefined> {
    const [name, description, state] = await this.redis.hmget(this.keys.connection(ref), 'n', 'ds', 'st');
    if (state === null) return undefined;
    return { id: ref.connectionId, name: name ?? '', description: description ?? '', state: state as ConnectionState };
  }

  /** The schema last submitted, as it was submitted; undefined when the connection has none
   *  (or does not exist: `get` tells which). */
  async schema(ref: ConnectionRef): Promise<ConnectionSchema | undefined> {
    const json = await this.redis.hget(this.keys.connection(ref), 'sc');
    return json ? (JSON.parse(json) as ConnectionSchema) : undefined;
  }

  /** One page of a tenant's connections, by id. Ids whose record is gone (deleted, or a create
   *  that failed half way) are skipped and taken off the list. */
  async list(tenantId: string, { top, after }: { top: number; after?: string }): Promise<ConnectionPage> {
    const connections: ExternalConnection[] = [];
    let from = after === undefined ? '-' : `(${after}`;
    for (;;) {
      const want = top + 1 - connections.length;
      const ids = await this.redis.zrangebylex(this.keys.tenantConnections(tenantId), from, '+', 'LIMIT', 0, want);
      const found = await Promise.all(ids.map((connectionId) => this.get({ tenantId, connectionId })));
      await Promise.all(ids.filter((_, i) => !found[i]).map((connectionId) => this.unlist({ tenantId, connectionId })));
      for (const connection of found) if (connection) connections.push(connection);
      if (connections.length > top) {
        connections.length = top;
        return { connections, next: connections[top - 1]!.id };
      }
      if (ids.length < want) return { connections };
      from = `(${ids[ids.length - 1]!}`;
    }
  }

  async count(tenantId: string): Promise<number> {
    return this.redis.zcard(this.keys.tenantConnections(tenantId));
  }

  /** What a schema update is checked against: the schema the connection has provisioned (none
   *  while it is draft), and the latest schema operation when it was read ('' for none), which
   *  `submitSchema` checks is still the latest. Undefined when the connection does not exist. */
  async provisioned(ref: ConnectionRef): Promise<{ schema?: ConnectionSchema; latestOperationId: string } | undefined> {
    const [state, schemaJson, latestOperationId] = await this.redis.hmget(this.keys.connection(ref), 'st', 'rs', 'so');
    if (state === null) return undefined;
    return { ...(schemaJson ? { schema: JSON.parse(schemaJson) as ConnectionSchema } : {}), latestOperationId: latestOperationId ?? '' };
  }

  /** Stores the schema and creates the operation that provisions it, unless the connection is
   *  missing, already provisioning or deleting, or had another schema submitted since
   *  `provisioned` was read (`latestOperationId`). The caller enqueues the operation, whose
   *  processing continues the caller's trace (when tracing is on). */
  async submitSchema(ref: ConnectionRef, schema: ConnectionSchema, latestOperationId: string): Promise<SubmitResult> {
    const operationId = randomUUID();
    const now = this.now();
    await this.operations.register(ref, now);
    const [result, inprogressId] = (await scripts.submitSchema.run(
      this.redis,
      [this.keys.connection(ref), this.keys.index(ref), this.keys.statusIndex(ref, 'inprogress')],
      [now, this.keys.operationPrefix(ref), this.operations.indexTtlMs, operationId, JSON.stringify(schema), latestOperationId, activeTraceparent() ?? ''],
    )) as [string, string?];
    if (result === 'accepted') return { result, operation: inprogressOperation(operationId, now) };
    if (result === 'missing') return { result };
    if (result === 'changed') return { result };
    return { result: result as 'provisioning' | 'deleting', operationId: inprogressId! };
  }

  /**
   * Creates the operation that deletes the connection; a schema operation still inprogress is
   * failed with `canceled` (the delete wins). The record stays until the delete operation
   * completes. The caller enqueues the operation, whose processing continues the caller's trace
   * (when tracing is on).
   */
  async delete(ref: ConnectionRef, canceled: ErrorDetail): Promise<DeleteResult> {
    const operationId = randomUUID();
    const now = this.now();
    await this.operations.register(ref, now);
    const [result, id] = (await scripts.deleteConnection.run(this.redis, this.operations.terminalKeys(ref), [
      ...this.operations.terminalArgs(ref),
      operationId,
      errorJson(canceled),
      this.keys.cancelsPrefix(),
      activeTraceparent() ?? '',
    ])) as [string, string?];
    if (result === 'missing') return { result };
    if (result === 'deleting') return { result, operationId: id! };
    return { result: 'accepted', operation: inprogressOperation(operationId, now), ...(id ? { canceledSchemaOperationId: id } : {}) };
  }

  /** Takes a connection whose record is gone off its tenant's list. Removed first and put back
   *  if a record exists after all: a create of the same id racing this call adds its entry
   *  again after its record (see create), so either way a record keeps its entry. */
  async unlist(ref: ConnectionRef): Promise<void> {
    const listKey = this.keys.tenantConnections(ref.tenantId);
    await this.redis.zrem(listKey, ref.connectionId);
    if (await this.get(ref)) await this.redis.zadd(listKey, 'NX', 0, ref.connectionId);
  }
}
