import type { OperationRef } from './operation.js';

/**
 * The one place that names Redis keys. Nobody else concatenates key strings.
 *
 * Layout (`v1` lets a future format live beside this one):
 *   {prefix}:v1:{tenant|connection}:o:{operationId}   hash   one operation (s, e, c, u; k for a
 *                                                             schema or delete operation; j a h l
 *                                                             while inprogress, see scripts.ts); the
 *                                                             short `o` segment keeps a typical key
 *                                                             (GUID tenant, UUID id) in jemalloc's
 *                                                             96-byte class, 16 bytes per operation
 *   {prefix}:v1:{tenant|connection}:index             zset   every operation, scored by creation ms
 *   {prefix}:v1:{tenant|connection}:status:{status}   zset   operations in one status; the
 *                                                             `inprogress` one is the outbox the
 *                                                             reconciler sweeps
 *   {prefix}:v1:{tenant|connection}:connection        hash   the externalConnection created by POST
 *                                                             (n name, ds description, st state, c
 *                                                             created ms, sc schema JSON, so id of its
 *                                                             latest schema operation, d id of its
 *                                                             delete operation while deleting); no
 *                                                             expiry: it lives until deleted
 *   {prefix}:v1:{tenant|connection}:changes           channel sharded pub/sub (SPUBLISH): the
 *                                                             terminal transitions of the
 *                                                             connection's operations, published by
 *                                                             the scripts that write them
 *   {prefix}:v1:cancels:{process}                     channel classic pub/sub: cancels of the
 *                                                             attempts one worker process holds
 *   {prefix}:v1:{tenant}:connections                  zset   the ids of a tenant's connections, all
 *                                                             scored 0 so that they page by id
 *                                                             (ZRANGEBYLEX); in the tenant's slot, so
 *                                                             kept beside the records, not with them
 *   {prefix}:v1:connections                           zset   "tenant|connection" pairs that had
 *                                                             creates, scored by last create ms
 *   {prefix}:v1:reconciler-lock                       string one reconciler sweep at a time
 *   {prefix}:v1:rate:{tenant}:{second}                counter requests of a tenant in one second
 *   {prefix}:{operations}:…                           BullMQ's own keys (its `prefix` option)
 *
 * The `{tenant|connection}` hash tag keeps one connection's keys in one Redis Cluster slot, so
 * each Lua script touches one slot. Tenant ids (`[A-Za-z0-9-]`) and connection ids
 * (`[A-Za-z0-9]`) cannot contain `|`, `{`, `}` or `:`, so the tag is unambiguous.
 */

export type ConnectionRef = Pick<OperationRef, 'tenantId' | 'connectionId'>;

export function connectionTag({ tenantId, connectionId }: ConnectionRef): string {
  return `${tenantId}|${connectionId}`;
}

export function parseConnectionTag(tag: string): ConnectionRef | undefined {
  const [tenantId, connectionId, ...rest] = tag.split('|');
  if (!tenantId || !connectionId || rest.length > 0) return undefined;
  return { tenantId, connectionId };
}

/** Items grouped by their connection, in first-seen order: each group is one cluster slot, so
 *  one script or pipeline. */
export function groupByConnection<T extends ConnectionRef>(items: T[]): T[][] {
  const groups = new Map<string, T[]>();
  for (const item of items) {
    const tag = connectionTag(item);
    const group = groups.get(tag);
    if (group) group.push(item);
    else groups.set(tag, [item]);
  }
  return [...groups.values()];
}

export function createKeys(prefix: string) {
  const connectionKey = (ref: ConnectionRef) => `${prefix}:v1:{${connectionTag(ref)}}`;
  return {
    /** Prefix of every operation hash of a connection; scripts append the operation id. */
    operationPrefix: (ref: ConnectionRef) => `${connectionKey(ref)}:o:`,
    operation: (ref: OperationRef) => `${connectionKey(ref)}:o:${ref.operationId}`,
    index: (ref: ConnectionRef) => `${connectionKey(ref)}:index`,
    statusIndex: (ref: ConnectionRef, status: string) => `${connectionKey(ref)}:status:${status}`,
    /** The externalConnection record, in the slot of its operations: the scripts that end a
     *  schema or delete operation change it in the same step (scripts.ts, TERMINAL). */
    connection: (ref: ConnectionRef) => `${connectionKey(ref)}:connection`,
    /** A tenant's connection ids, for listing them. */
    tenantConnections: (tenantId: string) => `${prefix}:v1:{${tenantId}}:connections`,
    /** A sharded pub/sub channel in the connection's slot (see scripts.ts, TERMINAL). */
    changes: (ref: ConnectionRef) => `${connectionKey(ref)}:changes`,
    /** The channel a worker process hears cancels of its attempts on; the cancel script appends
     *  the process id it reads from the holder token. */
    cancelsPrefix: () => `${prefix}:v1:cancels:`,
    connections: () => `${prefix}:v1:connections`,
    reconcilerLock: () => `${prefix}:v1:reconciler-lock`,
    rateLimit: (tenantId: string, second: number) => `${prefix}:v1:rate:{${tenantId}}:${second}`,
    /** BullMQ's `prefix` option; BullMQ appends `:{queue name}:…`. */
    bullPrefix: () => prefix,
  };
}

export type Keys = ReturnType<typeof createKeys>;
