import { Redis } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../src/shared/config.js';
import type { ConnectionSchema } from '../src/shared/connection-schema.js';
import { ConnectionStore } from '../src/shared/connection-store.js';
import type { ConnectionRef } from '../src/shared/keys.js';
import { OperationQueue, queueName } from '../src/shared/queue.js';
import { createRedis, waitUntilReady, warnUnlessNoEviction, type RedisClient } from '../src/shared/redis.js';
import { OperationStore } from '../src/shared/store.js';
import { Reconciler } from '../src/worker/reconciler.js';
import { createApiContextFor, OTHER_TENANT, signToken, silentLog, TENANT, TEST_SECRET, uniquePrefix } from './support/context.js';
import {
  callsPerWorker,
  createBodies,
  createOperation,
  finishLogCounts,
  getStatus,
  killWhenHolding,
  seenMoreThanOnce,
} from './support/load.js';
import { FAST_RECOVERY_TIMINGS, fastRecoveryEnv, mapWithConcurrency, ProcessGroup, SERVICE_RETENTION_MS, testServiceEnv, type RunningProcess } from './support/processes.js';
import { pollUntil } from './support/wait.js';
import { startProcessorServer, type ProcessorServer } from './support/processor-server.js';
import { startRedisCluster, type RedisCluster } from './support/redis-cluster.js';
import { freePort } from '../scripts/lib/free-port.js';
import { logMessage } from './support/log-messages.js';

/**
 * The service on a real three-master Redis Cluster (REDIS_URL a comma-separated node list, so
 * createRedis builds an ioredis Cluster): the store's scripts stay in one slot per connection
 * (the connection store's too, which write a connection's record with its operations),
 * connections and queue shards spread over the masters, and real API and worker processes
 * complete every operation even when a worker is SIGKILLed.
 */

const SHARDS = 6;
const WORKER_CONCURRENCY = 24;
/** Generous deadlines: they bound a failing test on a busy two-core machine. */
const START_TIMEOUT_MS = 30_000;
const RECOVERY_DEADLINE_MS = 20_000;
const CREATE_CONCURRENCY = 16;

let cluster: RedisCluster;
/** An ioredis Cluster, built by the service's own createRedis. */
let redis: RedisClient;
/** One plain client per node, to look at what each master holds. */
let nodeClients: Redis[] = [];
let processor: ProcessorServer;
let token: string;

beforeAll(async () => {
  cluster = await startRedisCluster(3);
  redis = createRedis({ url: cluster.url, role: 'consumer', connectionName: 'cluster-test' });
  await waitUntilReady(redis);
  nodeClients = cluster.nodes.map((node) => new Redis({ port: node.port, host: '127.0.0.1', maxRetriesPerRequest: 1 }));
  processor = await startProcessorServer();
  token = await signToken();
}, 60_000);

afterAll(async () => {
  await redis?.quit().catch(() => redis.disconnect());
  for (const client of nodeClients) client.disconnect();
  await processor?.close();
  await cluster?.destroy();
});

// ---- helpers ----

async function keySlot(key: string): Promise<number> {
  return Number(await nodeClients[0]!.call('CLUSTER', 'KEYSLOT', key));
}

/** The port of the master that serves this key's slot. */
async function masterOf(key: string): Promise<number> {
  return cluster.nodeOfSlot(await keySlot(key)).port;
}

/** Every key matching `pattern` that one node holds (SCAN never leaves the node). */
async function keysOnNode(client: Redis, pattern: string): Promise<string[]> {
  const keys: string[] = [];
  let cursor = '0';
  do {
    const [next, batch] = await client.scan(cursor, 'MATCH', pattern, 'COUNT', 1000);
    keys.push(...batch);
    cursor = next;
  } while (cursor !== '0');
  return keys;
}

function clientOfPort(port: number): Redis {
  const index = cluster.nodes.findIndex((node) => node.port === port);
  return nodeClients[index]!;
}

function storeFor(prefix: string, client: RedisClient = redis, retentionMs = SERVICE_RETENTION_MS, now?: () => number): OperationStore {
  return new OperationStore(client, { prefix, retentionMs, ...(now ? { now } : {}) });
}

// ---- the store ----

describe('the operation store on a three-master Redis Cluster', () => {
  it('creates, reads, finishes, lists and counts operations through a cluster client', async () => {
    // A clock that ticks on every read, so the creation order (newest first) is unambiguous.
    let clock = Date.now();
    const store = storeFor(uniquePrefix(), redis, SERVICE_RETENTION_MS, () => clock++);
    const connection: ConnectionRef = { tenantId: TENANT, connectionId: 'clusterstore' };
    const ids = ['12345', 'op-1', 'op.2_~', 'op-3', 'op-4'];
    for (const operationId of ids) expect((await store.create({ ...connection, operationId })).result).toBe('created');
    expect((await store.create({ ...connection, operationId: 'op-1' })).result).toBe('exists');

    expect(await store.get({ ...connection, operationId: '12345' })).toMatchObject({ id: '12345', status: 'inprogress', error: null });
    expect(await store.finish({ ...connection, operationId: '12345' }, 'completed')).toBe('finished');
    const detail = { errorCode: 'invalidItem', message: 'no title', details: [] };
    expect(await store.finish({ ...connection, operationId: 'op-1' }, 'failed', detail)).toBe('finished');
    expect(await store.finish({ ...connection, operationId: 'op-1' }, 'completed')).toBe('alreadyTerminal');
    expect(await store.finish({ ...connection, operationId: 'never-created' }, 'completed')).toBe('missing');
    expect(await store.get({ ...connection, operationId: 'op-1' })).toMatchObject({ status: 'failed', error: detail });

    // The list script reads operation hashes it reaches through ARGV (not KEYS): on a cluster
    // that works because they share the index's hash tag, so the node that runs it holds them.
    const firstPage = await store.list(connection, { top: 2 });
    expect(firstPage.operations.map((op) => op.id)).toEqual(['op-4', 'op-3']);
    const rest = await store.list(connection, { top: 10, cursor: firstPage.next! });
    expect(rest.operations.map((op) => op.id)).toEqual(['op.2_~', 'op-1', '12345']);
    expect(rest.next).toBeUndefined();
    expect((await store.list(connection, { top: 10, status: 'failed' })).operations.map((op) => op.id)).toEqual(['op-1']);
    expect(await store.count(connection)).toBe(5);
    expect(await store.count(connection, 'inprogress')).toBe(3);
    expect(await store.count(connection, 'completed')).toBe(1);
    expect(await store.connections()).toEqual([connection]);
    expect((await store.registryPage('0', 10)).connections.map((entry) => entry.connection)).toEqual([connection]);

    // The attempt scripts reach operation hashes through ARGV as well.
    const rules = { leaseMs: 60_000, attempts: 2, exhausted: { errorCode: 'processingInterrupted', message: 'spent', details: [] } };
    const claims = await store.claim(connection, '', [{ operationId: 'op-3', holder: 'h1' }, { operationId: 'op-4', holder: 'h2' }], rules);
    expect(claims).toEqual([{ kind: 'claimed', attempt: 1, task: { kind: 'operation' } }, { kind: 'claimed', attempt: 1, task: { kind: 'operation' } }]);
    expect(await store.renewLeases(connection, [{ operationId: 'op-3', holder: 'h1' }, { operationId: 'op-4', holder: 'other' }], 60_000)).toEqual(['renewed', 'lost']);
    expect(await store.finishMany(connection, [{ operationId: 'op-3', holder: 'h1', status: 'completed' }, { operationId: 'op-4', holder: 'h2', status: 'retry' }])).toEqual(['finished', 'finished']);
    expect(await store.handToOwnJob({ ...connection, operationId: 'op-4' }, 'batch~none')).toBe(false);
  });

  it('lets exactly one of many concurrent creates of one id win, across two cluster clients', async () => {
    const prefix = uniquePrefix();
    const other = createRedis({ url: cluster.url, role: 'producer', commandTimeoutMs: 5000 });
    try {
      await waitUntilReady(other);
      const stores = [storeFor(prefix), storeFor(prefix, other)];
      for (const operationId of ['race-1', '777', 'race.3']) {
        const ref = { tenantId: TENANT, connectionId: 'clusterrace', operationId };
        const results = await Promise.all(Array.from({ length: 40 }, (_, i) => stores[i % 2]!.create(ref)));
        expect(results.filter((r) => r.result === 'created')).toHaveLength(1);
        expect(results.filter((r) => r.result === 'exists')).toHaveLength(39);
      }
      expect(await stores[0]!.count({ tenantId: TENANT, connectionId: 'clusterrace' })).toBe(3);
    } finally {
      await other.quit().catch(() => other.disconnect());
    }
  });

  it('drops expired operations from listings, reading and removing keys in the connection slot', async () => {
    // Terminal operations expire after 50 ms here.
    const store = storeFor(uniquePrefix(), redis, 50);
    const connection: ConnectionRef = { tenantId: TENANT, connectionId: 'clusterexpiry' };
    for (const operationId of ['a1', 'a2', 'a3']) await store.create({ ...connection, operationId });
    await store.finish({ ...connection, operationId: 'a1' }, 'completed');
    await store.finish({ ...connection, operationId: 'a2' }, 'completed');
    await pollUntil(async () => (await store.get({ ...connection, operationId: 'a2' })) === undefined, {
      timeoutMs: 5000,
      what: 'the finished operations to expire',
    });
    expect((await store.list(connection, { top: 10 })).operations.map((op) => op.id)).toEqual(['a3']);
    expect(await store.count(connection)).toBe(1);
  });

  it('keeps every key of one connection in one slot on one master, and spreads connections over all three masters', async () => {
    const prefix = uniquePrefix();
    const store = storeFor(prefix);
    const connection: ConnectionRef = { tenantId: TENANT, connectionId: 'clusterslot' };
    for (const operationId of ['k1', 'k2', '4242', 'k.4']) await store.create({ ...connection, operationId });
    await store.finish({ ...connection, operationId: 'k1' }, 'completed');
    await store.finish({ ...connection, operationId: 'k2' }, 'failed', { errorCode: 'x', message: 'y', details: [] });

    const connectionKeys = (await Promise.all(nodeClients.map((client) => keysOnNode(client, `${prefix}:v1:{*`)))).flat();
    // 4 operation hashes, the index and three status indexes.
    expect(connectionKeys).toHaveLength(8);
    const slots = new Set(await Promise.all(connectionKeys.map(keySlot)));
    expect(slots).toEqual(new Set([await keySlot(`{${TENANT}|clusterslot}`)]));
    const owner = clientOfPort(cluster.nodeOfSlot([...slots][0]!).port);
    expect((await keysOnNode(owner, `${prefix}:v1:{*`)).sort()).toEqual([...connectionKeys].sort());

    // Many connections (and two tenants): their keys land on every master.
    const connections = Array.from({ length: 30 }, (_, i) => ({ tenantId: i % 2 ? TENANT : OTHER_TENANT, connectionId: `spread${i}` }));
    await Promise.all(connections.map((ref) => store.create({ ...ref, operationId: 'first' })));
    const perNode = await Promise.all(nodeClients.map(async (client) => (await keysOnNode(client, `${prefix}:v1:{*`)).length));
    console.log(`[cluster store] store keys per master for 31 connections: ${perNode.join(', ')}`);
    expect(perNode.every((count) => count > 0)).toBe(true);
    expect(perNode.reduce((sum, count) => sum + count, 0)).toBe(8 + connections.length * 3);
  });
});

// ---- the connection store ----

describe('the connection store on a three-master Redis Cluster', () => {
  const SCHEMA: ConnectionSchema = {
    baseType: 'microsoft.graph.externalItem',
    properties: [
      { name: 'ticketTitle', type: 'string', isSearchable: true, isRetrievable: true, labels: ['title'] },
      { name: 'priority', type: 'string', isQueryable: true, isRetrievable: true, isRefinable: true },
    ],
  };
  const CANCELED = { errorCode: 'operationCanceled', message: 'The connection was deleted while this schema was provisioning.', details: [] };
  const RULES = { leaseMs: 60_000, attempts: 3, exhausted: { errorCode: 'processingInterrupted', message: 'spent', details: [] } };

  it("creates, provisions (claim and finish make it ready), lists and deletes connections, each connection's record and operations in one slot", async () => {
    const prefix = uniquePrefix();
    const store = storeFor(prefix);
    const connections = new ConnectionStore(redis, store);
    const ids = ['clusterconna', 'clusterconnb', 'clusterconnc', 'clusterconnd', 'clusterconne', 'clusterconnf'];
    for (const id of ids) expect(await connections.create(TENANT, { id, name: `Connection ${id}`, description: id })).toBe('created');
    expect(await connections.create(TENANT, { id: ids[0]!, name: 'again' })).toBe('exists');
    // Another tenant's connection of the same id: its own record, its own list.
    expect(await connections.create(OTHER_TENANT, { id: ids[0]!, name: 'theirs' })).toBe('created');

    const ref: ConnectionRef = { tenantId: TENANT, connectionId: ids[0]! };
    expect(await connections.get(ref)).toEqual({ id: ref.connectionId, name: `Connection ${ref.connectionId}`, description: ref.connectionId, state: 'draft' });
    expect(await connections.provisioned(ref)).toEqual({ latestOperationId: '' });

    // The schema and the operation that provisions it, in one script: record and operation keys together.
    const submitted = await connections.submitSchema(ref, SCHEMA, '');
    expect(submitted.result).toBe('accepted');
    const schemaOperationId = submitted.result === 'accepted' ? submitted.operation.id : '';
    expect(await connections.schema(ref)).toEqual(SCHEMA);
    expect(await connections.submitSchema(ref, SCHEMA, '')).toEqual({ result: 'provisioning', operationId: schemaOperationId });

    // Every key of the connection (record, operation hash, indexes) shares its slot, on the master
    // that serves it; the tenant's list lives in the tenant's slot.
    const connectionKeys = (await Promise.all(nodeClients.map((client) => keysOnNode(client, `${prefix}:v1:{${TENANT}|${ref.connectionId}}*`)))).flat();
    expect(connectionKeys.sort()).toEqual(
      [store.keys.connection(ref), store.keys.operation({ ...ref, operationId: schemaOperationId }), store.keys.index(ref), store.keys.statusIndex(ref, 'inprogress')].sort(),
    );
    const slot = await keySlot(`{${TENANT}|${ref.connectionId}}`);
    expect(new Set(await Promise.all(connectionKeys.map(keySlot)))).toEqual(new Set([slot]));
    const owner = clientOfPort(cluster.nodeOfSlot(slot).port);
    expect(await owner.exists(store.keys.connection(ref))).toBe(1);
    expect(await keySlot(store.keys.tenantConnections(TENANT))).toBe(await keySlot(`{${TENANT}}`));
    // The connections spread over the masters, and at least one is on another master than the
    // tenant's list: a create writes two slots, never in one script.
    const masters = await Promise.all(ids.map((connectionId) => masterOf(store.keys.connection({ tenantId: TENANT, connectionId }))));
    expect(new Set(masters).size).toBeGreaterThan(1);
    const listMaster = await masterOf(store.keys.tenantConnections(TENANT));
    expect(masters.some((port) => port !== listMaster)).toBe(true);

    // A worker's claim is told to provision this schema; its finish makes the connection ready.
    const [claim] = await store.claim(ref, '', [{ operationId: schemaOperationId, holder: 'proc1:1' }], RULES);
    expect(claim).toEqual({ kind: 'claimed', attempt: 1, task: { kind: 'schema', schemaJson: JSON.stringify(SCHEMA) } });
    expect(await store.finishMany(ref, [{ operationId: schemaOperationId, holder: 'proc1:1', status: 'completed' }])).toEqual(['finished']);
    expect(await connections.get(ref)).toMatchObject({ state: 'ready' });
    expect(await connections.provisioned(ref)).toEqual({ schema: SCHEMA, latestOperationId: schemaOperationId });
    expect(await store.get({ ...ref, operationId: schemaOperationId })).toMatchObject({ status: 'completed', error: null });

    // The tenant's connections, by id, paged; the other tenant's are not among them.
    const first = await connections.list(TENANT, { top: 4 });
    expect(first.connections.map((connection) => connection.id)).toEqual(ids.slice(0, 4));
    expect(first.connections[0]!.state).toBe('ready');
    expect(first.next).toBe(ids[3]);
    const rest = await connections.list(TENANT, { top: 4, after: first.next! });
    expect(rest.connections.map((connection) => connection.id)).toEqual(ids.slice(4));
    expect(rest.next).toBeUndefined();
    expect(await connections.count(TENANT)).toBe(ids.length);
    expect((await connections.list(OTHER_TENANT, { top: 10 })).connections).toEqual([
      { id: ids[0], name: 'theirs', description: '', state: 'draft' },
    ]);

    // Delete: an operation of kind deleteConnection; its completion removes the record, not the
    // operations, and the connection leaves its tenant's list.
    const deleted = await connections.delete(ref, CANCELED);
    expect(deleted).toMatchObject({ result: 'accepted' });
    expect(deleted).not.toHaveProperty('canceledSchemaOperationId');
    const deleteOperationId = deleted.result === 'accepted' ? deleted.operation.id : '';
    expect(await connections.delete(ref, CANCELED)).toEqual({ result: 'deleting', operationId: deleteOperationId });
    expect(await connections.submitSchema(ref, SCHEMA, schemaOperationId)).toEqual({ result: 'deleting', operationId: deleteOperationId });
    const [deleteClaim] = await store.claim(ref, '', [{ operationId: deleteOperationId, holder: 'proc1:2' }], RULES);
    expect(deleteClaim).toEqual({ kind: 'claimed', attempt: 1, task: { kind: 'deleteConnection' } });
    expect(await store.finishMany(ref, [{ operationId: deleteOperationId, holder: 'proc1:2', status: 'completed' }])).toEqual(['finished']);
    expect(await connections.get(ref)).toBeUndefined();
    expect(await owner.exists(store.keys.connection(ref))).toBe(0);
    await connections.unlist(ref);
    expect((await connections.list(TENANT, { top: 10 })).connections.map((connection) => connection.id)).toEqual(ids.slice(1));
    expect(await connections.count(TENANT)).toBe(ids.length - 1);
    expect((await store.list(ref, { top: 10 })).operations.map((operation) => [operation.id, operation.status]).sort()).toEqual(
      [[schemaOperationId, 'completed'], [deleteOperationId, 'completed']].sort(),
    );
    // The other tenant's connection of that id is untouched.
    expect(await connections.get({ tenantId: OTHER_TENANT, connectionId: ids[0]! })).toMatchObject({ name: 'theirs' });
  });

  it('lets a delete win over a schema still provisioning on the cluster: the schema operation fails canceled in the same script, and its holder is told', async () => {
    const prefix = uniquePrefix();
    const store = storeFor(prefix);
    const connections = new ConnectionStore(redis, store);
    const ref: ConnectionRef = { tenantId: TENANT, connectionId: 'clusterdeletewins' };
    expect(await connections.create(TENANT, { id: ref.connectionId, name: 'Delete wins' })).toBe('created');
    const submitted = await connections.submitSchema(ref, SCHEMA, '');
    const schemaOperationId = submitted.result === 'accepted' ? submitted.operation.id : '';
    expect(await store.claim(ref, '', [{ operationId: schemaOperationId, holder: 'proc9:1' }], RULES)).toMatchObject([{ kind: 'claimed' }]);

    // The holder's process hears its cancels on a classic channel: a PUBLISH from a script on one
    // master reaches a subscriber on any.
    const listener = new Redis({ port: cluster.nodes[0]!.port, host: '127.0.0.1', maxRetriesPerRequest: 1 });
    try {
      const told = new Promise<string>((resolve) => listener.on('message', (_channel: string, message: string) => resolve(message)));
      await listener.subscribe(`${store.keys.cancelsPrefix()}proc9`);
      const deleted = await connections.delete(ref, CANCELED);
      expect(deleted).toMatchObject({ result: 'accepted', canceledSchemaOperationId: schemaOperationId });
      expect(await told).toBe('proc9:1');
    } finally {
      listener.disconnect();
    }
    expect(await store.get({ ...ref, operationId: schemaOperationId })).toMatchObject({ status: 'failed', error: CANCELED });
    // The late finish of the canceled attempt changes nothing, and the connection stays draft.
    expect(await store.finishMany(ref, [{ operationId: schemaOperationId, holder: 'proc9:1', status: 'completed' }])).toEqual(['alreadyTerminal']);
    expect(await connections.get(ref)).toMatchObject({ state: 'draft' });
  });
});

// ---- the service processes ----

describe('the service processes on the cluster with six queue shards', () => {
  const prefix = uniquePrefix();
  const group = new ProcessGroup(
    testServiceEnv(prefix, { QUEUE_SHARDS: String(SHARDS), ...fastRecoveryEnv, WORKER_CONCURRENCY: String(WORKER_CONCURRENCY) }),
  );
  let baseUrl: string;
  let api: RunningProcess;
  let workers: RunningProcess[];
  let store: OperationStore;
  let queue: OperationQueue;

  beforeAll(async () => {
    const apiPort = await freePort();
    baseUrl = `http://127.0.0.1:${apiPort}`;
    const env = { REDIS_URL: cluster.url };
    const [apiProcess, ...started] = await Promise.all([
      // Warnings only: a request log line per create is CPU the two cores need for the load. A
      // longer Redis timeout than REDIS_COMMAND_TIMEOUT_MS's default: on a starved machine a
      // create can wait that long, and a 503 is not what this test is about.
      group.startApi('api', apiPort, { ...env, LOG_LEVEL: 'warn', REDIS_COMMAND_TIMEOUT_MS: '5000' }, START_TIMEOUT_MS),
      group.startWorker('worker-1', { ...env, PROCESSOR_URL: processor.urlFor('worker-1', 40) }, START_TIMEOUT_MS),
      group.startWorker('worker-2', { ...env, PROCESSOR_URL: processor.urlFor('worker-2', 40) }, START_TIMEOUT_MS),
    ]);
    api = apiProcess;
    workers = started;
    store = storeFor(prefix);
    queue = new OperationQueue(redis, prefix, { attempts: 5, backoffMs: FAST_RECOVERY_TIMINGS.OPERATION_BACKOFF_MS }, silentLog, SHARDS);
  }, 60_000);

  afterAll(async () => {
    await group.killAll();
    await queue?.close();
  });

  it('completes every acknowledged operation across shards on all three masters when a worker is SIGKILLed mid-load', async ({ onTestFailed }) => {
    onTestFailed(() => console.log(`[cluster] output of the processes:\n${group.describe()}`));
    processor.reset();
    const connections = ['clusterload0', 'clusterload1', 'clusterload2'];
    const refs = (connectionId: string) => ({ tenantId: TENANT, connectionId });

    // The shards' queues hash to slots of different masters.
    const shardMasters = await Promise.all(Array.from({ length: SHARDS }, (_, shard) => masterOf(`${prefix}:${queueName(shard, SHARDS)}:meta`)));
    console.log(`[cluster e2e] queue shard -> master port: ${shardMasters.map((port, shard) => `${queueName(shard, SHARDS)}=${port}`).join(', ')}`);
    expect(new Set(shardMasters).size).toBe(3);

    // Records stored with no job (an API that died between the two writes): only the
    // reconciler, sweeping the cluster, can finish them.
    const outbox = ['outbox-1', '31337', 'outbox.3_~-'];
    for (const operationId of outbox) expect((await store.create({ ...refs('clusterload0'), operationId })).result).toBe('created');

    // Kill worker-1 from inside the processor's handler once a good part of the load went
    // through and it holds calls: it certainly dies with work in flight.
    const victim = workers[0]!;
    const kill = killWhenHolding(processor, victim, { afterCalls: 90, lateAfterCalls: 200 });

    const bodies = connections.flatMap((connectionId, series) => createBodies(100, series + 1).map((body) => ({ connectionId, body })));
    const startedAt = Date.now();
    const outcomes = await mapWithConcurrency(bodies, CREATE_CONCURRENCY, ({ connectionId, body }) => createOperation(baseUrl, token, connectionId, body));
    const createMs = Date.now() - startedAt;
    const acknowledged = outcomes.filter((outcome) => outcome.status === 201);
    expect(acknowledged, `creates not answered 201: ${JSON.stringify(outcomes.filter((o) => o.status !== 201).slice(0, 5))}`).toHaveLength(300);
    expect(acknowledged.map((outcome) => outcome.operationId)).toContain('1012345');

    const { killedAt, inFlightAtKill } = await kill.waitForKill(RECOVERY_DEADLINE_MS);
    expect(await victim.waitForExit(5000)).toEqual({ code: null, signal: 'SIGKILL' });

    await pollUntil(
      async () => {
        const counts = await Promise.all(connections.map((connectionId) => store.count(refs(connectionId), 'inprogress')));
        return counts.every((count) => count === 0);
      },
      {
        timeoutMs: RECOVERY_DEADLINE_MS,
        intervalMs: 200,
        what: 'every operation to leave inprogress after worker-1 was killed',
        context: async () => {
          const stuck = await store.inprogressCreatedBefore(refs(connections[0]!), Date.now() + 1, 10);
          return `still inprogress in ${connections[0]}: ${stuck.join(', ')}\n${group.describe()}`;
        },
      },
    );

    // As a client sees it: every acknowledged operation completed.
    const statuses = await mapWithConcurrency(acknowledged, CREATE_CONCURRENCY, (outcome) =>
      getStatus(baseUrl, token, outcome.connectionId, outcome.operationId!),
    );
    const notCompleted = acknowledged.filter((_, i) => statuses[i] !== 'completed').map((o, i) => `${o.operationId}: ${statuses[i]}`);
    expect(notCompleted).toEqual([]);
    for (const [i, connectionId] of connections.entries()) {
      expect(await store.count(refs(connectionId), 'completed')).toBe(100 + (i === 0 ? outbox.length : 0));
      expect(await store.count(refs(connectionId), 'failed')).toBe(0);
    }
    for (const operationId of outbox) expect((await store.get({ ...refs('clusterload0'), operationId }))?.status).toBe('completed');

    // Every shard carried jobs, and its keys live on the master its slot names.
    for (let shard = 0; shard < SHARDS; shard++) {
      const eventsKey = `${prefix}:${queueName(shard, SHARDS)}:events`;
      expect(await clientOfPort(shardMasters[shard]!).xlen(eventsKey), `events of shard ${shard} on its master`).toBeGreaterThan(0);
    }
    expect((await queue.counts('active', 'wait', 'delayed', 'failed')).active).toBe(0);

    // Nothing finished twice; what the killed worker held ran again on worker-2.
    const survivor = workers[1]!;
    const total = acknowledged.length + outbox.length;
    // Log lines reach stdout 4 KiB at a time or every 200 ms (src/shared/logger.ts): wait until
    // worker-2's outcome line for every operation it called the processor for is in. (worker-1's
    // last lines may have died unwritten with it.)
    const outcomeMessages = [logMessage('operation finished'), logMessage('outcome not recorded: the operation was already terminal, or its lease was taken over')];
    const outcomeLogged = (line: { msg?: string }) => outcomeMessages.includes(String(line.msg));
    const calledBySurvivor = new Set(processor.calls.filter((call) => call.worker === 'worker-2').map((call) => call.operationId));
    await pollUntil(
      () => {
        const logged = new Set(survivor.logs.filter(outcomeLogged).map((line) => String(line.operationId)));
        return [...calledBySurvivor].every((id) => logged.has(id));
      },
      { timeoutMs: 5000, what: "worker-2's log lines for every operation it processed" },
    );
    const finishedTwice = [...finishLogCounts(workers)].filter(([, count]) => count > 1);
    expect(finishedTwice).toEqual([]);
    const seen = processor.timesSeen();
    for (const call of inFlightAtKill) expect(seen.get(call.operationId), `${call.operationId} was in flight on worker-1`).toBeGreaterThanOrEqual(2);
    expect(survivor.exit).toBeUndefined();
    // Only the killed worker's operations ran twice (at-least-once after a crash, nothing else).
    const workersOf = (id: string) => new Set(processor.calls.filter((call) => call.operationId === id).map((call) => call.worker));
    for (const id of seenMoreThanOnce(processor)) expect([...workersOf(id)], `workers that ran ${id}`).toContain('worker-1');
    // No cluster trouble on the way: no connection errors, redirection loops or CLUSTERDOWN.
    const warnings = [api, ...workers].flatMap((child) =>
      child.logs.filter((line) => (line.level ?? 0) >= 40 && line.msg !== logMessage('reconciler repaired operations')).map((line) => `${child.name}: ${line.msg}`),
    );
    expect(warnings).toEqual([]);

    const killedIds = new Set(inFlightAtKill.map((call) => call.operationId));
    // Calls worker-1 had sent but not seen answered when it died: the snapshot taken at the kill,
    // plus requests already on their way that the processor read just after.
    const unansweredAtKill = processor.calls.filter((call) => call.worker === 'worker-1' && (call.answeredAt ?? Infinity) >= killedAt);
    const lastActions = await Promise.all(
      acknowledged.map(async (outcome) => (await store.get({ ...refs(outcome.connectionId), operationId: outcome.operationId! }))!),
    );
    const recoveredAt = Math.max(...lastActions.filter((op) => killedIds.has(op.id)).map((op) => op.lastActionAt));
    const shares = callsPerWorker(processor);
    console.log(
      `[cluster e2e] acknowledged ${acknowledged.length} (+${outbox.length} outbox records), terminal ${total}, ` +
        `lost ${notCompleted.length}, finished twice ${finishedTwice.length} ` +
        `(finish lines logged ${[...finishLogCounts(workers).values()].reduce((sum, n) => sum + n, 0)}, some of the killed worker's die unwritten), ` +
        `created in ${createMs} ms; processor calls per worker: ${[...shares].map(([w, n]) => `${w}=${n}`).join(', ')}; ` +
        `in flight on the killed worker: ${killedIds.size} at the kill, ${unansweredAtKill.length} counting requests already sent; ` +
        `ids the processor saw twice: ${seenMoreThanOnce(processor).length}; ` +
        `kill -> killed worker's jobs terminal: ${recoveredAt - killedAt} ms, ` +
        `kill -> last operation terminal: ${Math.max(...lastActions.map((op) => op.lastActionAt)) - killedAt} ms`,
    );
    expect(recoveredAt - killedAt).toBeLessThan(FAST_RECOVERY_TIMINGS.WORKER_LOCK_DURATION_MS + 3 * FAST_RECOVERY_TIMINGS.WORKER_STALLED_INTERVAL_MS + 3000);
  }, 60_000);

  it('pages and filters a connection listing through the API on the cluster', async () => {
    processor.reset();
    const connectionId = 'clusterlisting';
    const outcomes = await mapWithConcurrency(createBodies(25, 7), 8, (body) => createOperation(baseUrl, token, connectionId, body));
    expect(outcomes.map((outcome) => outcome.status)).toEqual(outcomes.map(() => 201));
    const created = outcomes.map((outcome) => outcome.operationId!);
    const ref = { tenantId: TENANT, connectionId };
    await pollUntil(async () => (await store.count(ref, 'completed')) === 25, {
      timeoutMs: RECOVERY_DEADLINE_MS,
      intervalMs: 100,
      what: 'the listing operations to complete',
      context: () => group.describe(),
    });

    const headers = { authorization: `Bearer ${token}` };
    type Page = { value: { id: string; status: string; createdDateTime: string }[]; '@odata.nextLink'?: string; '@odata.count'?: number };
    const listed: Page['value'] = [];
    let pages = 0;
    let url: string | undefined = `${baseUrl}/v1.0/external/connections/${connectionId}/operations?$top=7&$count=true`;
    while (url) {
      const response = await fetch(url, { headers });
      expect(response.status).toBe(200);
      const page = (await response.json()) as Page;
      if (pages === 0) expect(page['@odata.count']).toBe(25);
      listed.push(...page.value);
      pages++;
      url = page['@odata.nextLink'];
    }
    expect(pages).toBe(4);
    expect(listed.map((op) => op.id).sort()).toEqual([...created].sort());
    const times = listed.map((op) => Date.parse(op.createdDateTime));
    expect(times).toEqual([...times].sort((a, b) => b - a));

    const filtered = async (status: string) => {
      const query = new URLSearchParams({ $filter: `status eq '${status}'`, $count: 'true', $top: '999' });
      const response = await fetch(`${baseUrl}/external/connections/${connectionId}/operations?${query.toString()}`, { headers });
      expect(response.status).toBe(200);
      return (await response.json()) as Page;
    };
    const completed = await filtered('completed');
    expect(completed['@odata.count']).toBe(25);
    expect(completed.value.map((op) => op.status)).toEqual(created.map(() => 'completed'));
    expect((await filtered('inprogress')).value).toEqual([]);
    expect((await filtered('failed'))['@odata.count']).toBe(0);
  }, 45_000);
});

// ---- rate limit and reconciler lock ----

describe('the rate limit and the reconciler on the cluster', () => {
  it('answers 429 once a tenant exceeds its rate, counting in the tenant slot', async () => {
    const prefix = uniquePrefix();
    // The app wired like the API process, with a producer Cluster client from createRedis.
    const ctx = await createApiContextFor(
      loadConfig({ REDIS_URL: cluster.url, REDIS_PREFIX: prefix, AUTH_JWT_SECRET: TEST_SECRET, LOG_LEVEL: 'silent', RATE_LIMIT_PER_TENANT: '5' }),
    );
    try {
      const path = '/external/connections/clusterrate/operations';
      const statuses: number[] = [];
      for (let i = 0; i < 12; i++) statuses.push((await ctx.request(path)).status);
      // 12 requests within at most two one-second windows: at most 10 pass.
      expect(statuses.filter((status) => status === 200).length).toBeLessThanOrEqual(10);
      expect(statuses).toContain(429);
      const otherTenant = await ctx.request(path, { headers: { authorization: `Bearer ${await signToken({ tid: OTHER_TENANT })}` } });
      expect(otherTenant.status).toBe(200);

      // Each tenant's counters live in that tenant's slot (the MULTI of INCR and PEXPIRE needs one).
      const rateKeys = (await Promise.all(nodeClients.map((client) => keysOnNode(client, `${prefix}:v1:rate:*`)))).flat();
      expect(rateKeys.length).toBeGreaterThan(0);
      for (const key of rateKeys) {
        const tenant = /\{([^}]+)\}/.exec(key)![1]!;
        expect([TENANT, OTHER_TENANT]).toContain(tenant);
        expect(await keySlot(key)).toBe(await keySlot(`{${tenant}}`));
      }
    } finally {
      // Not ctx.close(): its KEYS + one DEL of every key is a single-Redis shortcut (the keys of
      // several slots in one DEL are a CROSSSLOT error); the cluster goes away with the file.
      await ctx.queue.close();
      await ctx.redis.quit().catch(() => ctx.redis.disconnect());
    }
  });

  it('gives the reconciler lock to one caller at a time and re-enqueues jobless operations into their shards', async () => {
    const prefix = uniquePrefix();
    const store = storeFor(prefix);
    expect(await store.acquireReconcilerLock('first', 300)).toBe(true);
    expect(await store.acquireReconcilerLock('second', 300)).toBe(false);
    expect(await store.renewReconcilerLock('second', 300)).toBe(false);
    expect(await store.renewReconcilerLock('first', 300)).toBe(true);
    await store.releaseReconcilerLock('second');
    expect(await store.acquireReconcilerLock('second', 300)).toBe(false);
    await store.releaseReconcilerLock('first');
    expect(await store.acquireReconcilerLock('second', 300)).toBe(true);
    await pollUntil(() => store.acquireReconcilerLock('third', 300), { timeoutMs: 5000, what: 'the reconciler lock to lapse' });

    const queue = new OperationQueue(redis, prefix, { attempts: 5, backoffMs: 50 }, silentLog, SHARDS);
    try {
      const refs = Array.from({ length: 24 }, (_, i) => ({ tenantId: TENANT, connectionId: `clusterrec${i % 8}`, operationId: String(5000 + i) }));
      for (const ref of refs) await store.create(ref);
      // Sweeps run "a minute later", so every record is old enough to be repaired.
      const reconciler = new Reconciler({ store, queue, log: silentLog, intervalMs: 20, afterMs: 1000, now: () => Date.now() + 60_000 });
      const first = await pollUntil(async () => {
        const result = await reconciler.sweep();
        return result.checked > 0 ? result : undefined;
      }, { timeoutMs: 5000, what: 'a sweep that gets the lock' });
      expect(first).toMatchObject({ ran: true, connections: 8, checked: 24, enqueued: 24 });
      expect(new Set(await Promise.all(refs.map((ref) => queue.stateOfOwnJob(ref))))).toEqual(new Set(['waiting']));
      const perShard = await Promise.all(queue.queues.map((shard) => shard.getWaitingCount()));
      expect(perShard.reduce((sum, n) => sum + n, 0)).toBe(24);
      expect(perShard.filter((n) => n > 0).length).toBeGreaterThan(1);

      // Jobs now exist: a second sweep leaves them alone (the re-enqueue is idempotent anyway).
      const second = await pollUntil(async () => {
        const result = await reconciler.sweep();
        return result.checked > 0 ? result : undefined;
      }, { timeoutMs: 5000, what: 'a second sweep that gets the lock' });
      expect(second).toMatchObject({ ran: true, checked: 24, enqueued: 0 });
      console.log(`[cluster reconciler] 24 jobless records re-enqueued over ${SHARDS} shards: ${perShard.join(', ')} per shard`);
    } finally {
      await queue.close();
    }
  });
});

describe('the eviction check on the cluster', () => {
  it('warns about the one master whose maxmemory-policy is not noeviction', async () => {
    const warnings: { obj: object; msg: string }[] = [];
    const log = { warn: (obj: object, msg: string) => void warnings.push({ obj, msg }) };
    await warnUnlessNoEviction(redis, log);
    expect(warnings).toEqual([]);

    const lax = cluster.nodes[1]!;
    await nodeClients[1]!.config('SET', 'maxmemory-policy', 'allkeys-lru');
    try {
      await warnUnlessNoEviction(redis, log);
      expect(warnings).toEqual([{ obj: { policy: 'allkeys-lru', node: `127.0.0.1:${lax.port}` }, msg: expect.stringMatching(/noeviction/) as string }]);
    } finally {
      await nodeClients[1]!.config('SET', 'maxmemory-policy', 'noeviction');
    }
  });
});
